"""vmxlab benchmarks: `python -m bench` runs every module here that has main();
`python -m bench.NAME` runs one."""
