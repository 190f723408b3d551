"""The execution engine: requests become jobs, jobs run block by block into sinks."""
