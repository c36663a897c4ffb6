"""The HTTP layer on the socket: the server, its routes, the client."""
