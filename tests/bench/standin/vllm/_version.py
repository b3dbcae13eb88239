__version__ = version = "0.0.0"
__commit_id__ = commit_id = "0123abc"
