"""The operator screen: header, counters, one card per slot, the scan field and the log pane."""
