"""`rtcap ui`: a local, read-only web app over the views; and the session page's script and style."""
