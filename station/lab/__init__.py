"""The lab: a local AWS IoT (control plane + data plane) for tests, the demo and operator training.

Only wiring imports this package (`station lab`, `station demo`, tests); the station's core never does.
"""

from station.lab.lab import Lab, LabRegistry, target_name

__all__ = ["Lab", "LabRegistry", "target_name"]
