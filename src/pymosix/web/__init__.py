"""The web monitor: openMosixview and openMosixmigmon in a browser, served by the agent
(docs/web.md). `server.WebMonitor` is the agent component; `auth` its tokens and sessions; `view`
the pure assembly of what the page shows."""
