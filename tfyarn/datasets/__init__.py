"""Data sets tfyarn's benchmarks and examples use, built on the machine that runs them.

:mod:`.apt` reads Debian's package lists (``/var/lib/apt/lists``); :mod:`.debdesc`
builds DebDesc-20 from them (``tfyarn data debdesc``).
"""
