"""Run every benchmark module of this package (each module with a main())."""
import importlib
import pkgutil

import bench

for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
    if info.name.startswith("_"):
        continue
    module = importlib.import_module(f"bench.{info.name}")
    if hasattr(module, "main"):
        print(f"== bench.{info.name}")
        module.main()
