"""The benchmark of issue 5: imgsync against a naive script and a fast-bitrix24 peer, on the emulator.

``python -m bench.run`` runs it; see ``bench/README.md``. Nothing here is imported by ``imgsync``.
"""
