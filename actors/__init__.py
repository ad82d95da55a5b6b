"""Ray actor classes: thin shells around ``reasonrec`` objects for Ray Data and Ray Serve.

The foundation trains and evaluates through Ray Train and plain library calls; the nightly job (horizon and
tool actor pools) and the Serve deployments add their actors here.
"""
