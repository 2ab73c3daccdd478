"""Evaluation: a model over a split's rows (`rows`: v0 tracks) or as the CodeAct agent over a
split's tasks (`agent`), scored by the track, written as a metrics file."""
