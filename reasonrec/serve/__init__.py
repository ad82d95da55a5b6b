"""Live traffic through Ray Serve: the request/response contract and the plain parts the deployments wrap."""
