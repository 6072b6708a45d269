"""FX graph passes on the Dynamo graph: find attention sites and rewrite them to binary attention."""
