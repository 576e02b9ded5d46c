"""The `vip5` command line and the embedded runtime pieces (broker, demo) that wire the packages."""
