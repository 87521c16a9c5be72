"""HTML reports: a run's curves (``vcap report``) and captions beside their frames
(``vcap evaluate --report``, ``vcap caption --report``)."""
