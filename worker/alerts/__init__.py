"""On-call alerts: pure rules (`rules`) and the channels that carry them (`channels`)."""
