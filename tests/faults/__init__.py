"""The fault and load suite: each module runs one family of scenarios on the real daemon
subprocess with the tiny checkpoint. Every scenario is a function that applies its fault,
checks what kbd promises and returns an Outcome (runs, failures, data lost, figures); the
tests call them with small bounded parameters, bench/load.py with larger ones."""
