"""The errors that are the user's to fix; this module imports nothing, so every layer can raise them.

``train.py`` and ``eval.py`` turn an :class:`InputError` into one line on stderr and exit status 1
(:func:`dsnet.cli.run`); so do the other entry points for their own subclasses.
"""


class InputError(ValueError):
    """Something the user has to fix (a setting, path or file); the message names key and value.

    Subclasses say where it was found: :class:`dsnet.guards.TrainInputError`,
    :class:`dsnet.evaluate.EvalInputError`, :class:`dsnet.allocator.AllocatorError`.
    """
