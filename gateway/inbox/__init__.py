"""The inbox: inbound persisted before ack, de-duplicated, processed after a restart."""
