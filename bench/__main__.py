"""`python -m bench` (make bench): every benchmark module in bench/, each with main()."""
import importlib
import pkgutil

import bench

for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
    if not info.name.startswith("_"):
        importlib.import_module(f"bench.{info.name}").main([])
