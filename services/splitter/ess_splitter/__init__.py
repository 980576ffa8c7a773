"""The splitter: cuts an edge's cached files into event-range files in the object store."""
