"""What a checkpoint file is: written atomically, read without running code, turned back into a model;
weights brought in from other libraries."""
