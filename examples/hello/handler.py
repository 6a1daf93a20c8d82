def handle(req):
    """A plain synchronous function: greets whoever the body names."""
    name = req.strip() or "world"
    return f"Hello, {name}!\n"
