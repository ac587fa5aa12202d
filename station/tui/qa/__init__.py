"""The QA desk: a PIN screen, the desk itself (search, records, audit trail, actions) and its dialogs."""
