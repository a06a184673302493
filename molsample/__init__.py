"""molsample: one-step Boltzmann samplers with exact importance weights, compared against MD."""
import logging as _logging

# pymbar announces at import that JAX is absent (it falls back to numpy, which is what molsample
# uses) and prints a paragraph on the timeseries module's assumptions; neither is the user's
# business, and molsample's reports state the statistical inefficiencies they use. Errors still show.
_logging.getLogger("pymbar").setLevel(_logging.ERROR)
