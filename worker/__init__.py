"""The streamfan worker: an arq function that streams one upstream reply into Redis."""
