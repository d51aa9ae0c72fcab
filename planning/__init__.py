"""Capacity planning: the hardware and price catalog, the memory/roofline model (`python -m bench plan`) and
`recommend` (a bench run -> autoscaling settings).

Both the stacks (preview-time fit check, default prices) and the load tester import it, so it stays
import-light: no HTTP clients, no plotting, no Pulumi at import time.
"""
