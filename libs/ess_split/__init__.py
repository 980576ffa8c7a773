"""ESS's split engine: cut ROOT files into event-range files at the level of ROOT's format.

Every tree whose entries are the file's events is cut into ranges whatever its branches hold;
everything else is carried into every range file whole. Used by the edge's splitter (whole
cached files, ``split_root_file`` and ``parallel``), by on-demand splits of one range straight
from a remote source (``remote``), and by ``ess split`` on the command line.
"""
