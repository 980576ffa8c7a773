"""ROOT's file format at the level of bytes: serialised objects, keys, directories, the file
header, compression and the streamer records that describe classes."""
