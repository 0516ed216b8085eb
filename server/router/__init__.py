"""The router: chunking, backend clients, speaker linking, merge, the pipeline and its app. Imports server.core and server.kit; talks to the engines over HTTP only."""
