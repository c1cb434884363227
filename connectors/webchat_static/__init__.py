"""Static files of the webchat channel: the embeddable widget (``widget.js``) and an example page.

A package only so the files are installed with it; :mod:`connectors.webchat` serves them.
"""
