"""Activity recognition personalised per user: pretrain on some HAPT users, adapt on each other user's device.

``personalize`` runs every method per user under a measured memory budget; ``federated`` trains across all
30 users as natural clients, each scored on their own later windows.
"""

from pocketlearn.apps.har.data import HarSplit, UserData, split_users
from pocketlearn.apps.har.memory import Fit, PeakCache
from pocketlearn.apps.har.personalize import HarResult, PersonalizeConfig, UserResult, run_personalization

__all__ = ["Fit", "HarResult", "HarSplit", "PeakCache", "PersonalizeConfig", "UserData", "UserResult",
           "run_personalization", "split_users"]
