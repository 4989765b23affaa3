"""The model a node holds: the tiny architecture and its tokenizer, model directories, the base
cache of adapter rounds, and whether a model fits the device (`memory_fit`)."""
