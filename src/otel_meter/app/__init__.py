"""The application layer: each document the usage API answers and the command line prints,
computed once from a typed request, below both adapters (neither imports the other)."""
