"""End-to-end tests of the README's promises: the real server, real ccxt.pro and the emulator.

Each test names the README sentence it proves. Shared waits and child processes come from
:mod:`tests.support`.
"""
