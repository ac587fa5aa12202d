"""Device-side models of each family (on real ptys), with fault injection: for tests, the demo and training.

Simulators may use awscrt/awsiot (a device's own connectivity check); the station's core never imports them.
"""
