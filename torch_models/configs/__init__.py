"""Architecture configs (YAML) of the NeMo models; a package so wheels ship them."""
