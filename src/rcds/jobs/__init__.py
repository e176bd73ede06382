"""Job tools: submit side (pack, CID, upload) and job side (wait, link)."""
