"""Never-ending UI learning on the device, after Wu et al. (UIST 2023).

Tap real interfaces in a fenced browser, label each tap from the screens before and after, and learn from pixels
alone which elements are tappable, across devices, with no screenshot leaving one.
"""
