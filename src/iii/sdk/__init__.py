"""The worker SDK behind ``import iii``.

``_protocol`` is the sans-I/O core (registrations, replay, calls in flight, what each engine
frame means); ``client`` pumps it over a picows socket on a loop; ``actions`` holds the
``TriggerAction`` values.
"""
