import torch as th

# One torch thread: the CI machine has 2 cores, and more threads make small networks slower, not faster
th.set_num_threads(1)
