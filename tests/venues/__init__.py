"""The venue suite: one set of tests parametrized over every emulated venue (:mod:`flight_md.venues`)."""
