"""StreamFlow's benchmarks (`make bench`, entry point ``bench/run.py``): one module per benchmark, a shared harness."""
