"""The paper's published rows (ReasonRec, Tables 1 and 2) for the datasets this repository can load, so that
``reasonrec report`` prints our measured figures beside them. Numbers copied from ../shared/reasonrec-paper.txt.

Keys are the prepared dataset's name (``meta.json`` "dataset"); a dataset the paper did not evaluate has no rows.
"""
from __future__ import annotations

# Table 1: HR@5, NDCG@5; sequential (full ranking) and direct (1 + 99 candidates) recommendation.
TABLE_1 = {
    "amazon_beauty": {
        "sequential": {"SASRec": (0.0403, 0.0297), "S3-Rec": (0.0415, 0.0286), "LightSANs": (0.0435, 0.0250),
                       "NextItNet": (0.0427, 0.0248), "Majority Vote": (0.0492, 0.0315), "P5": (0.0483, 0.0398),
                       "VIP5": (0.0565, 0.0489), "UniMP": (0.0602, 0.0531), "REASONREC": (0.0797, 0.0944)},
        "direct": {"BPR-MF": (0.1426, 0.0913), "BPR-MLP": (0.1381, 0.0891), "LightGCN": (0.1501, 0.0904),
                   "Majority Vote": (0.1612, 0.1043), "P5": (0.1681, 0.1123), "VIP5": (0.1739, 0.1113),
                   "UniMP": (0.1825, 0.1220), "REASONREC": (0.2351, 0.1655)},
    },
    "amazon_toys": {
        "sequential": {"SASRec": (0.0463, 0.0338), "S3-Rec": (0.0443, 0.0344), "LightSANs": (0.0481, 0.0354),
                       "NextItNet": (0.0470, 0.0327), "Majority Vote": (0.0512, 0.0382), "P5": (0.0694, 0.0523),
                       "VIP5": (0.0712, 0.0596), "UniMP": (0.0794, 0.0647), "REASONREC": (0.1032, 0.0901)},
        "direct": {"BPR-MF": (0.1023, 0.0641), "BPR-MLP": (0.1171, 0.0721), "LightGCN": (0.1121, 0.0744),
                   "Majority Vote": (0.1229, 0.0813), "P5": (0.1232, 0.0841), "VIP5": (0.1245, 0.0829),
                   "UniMP": (0.1302, 0.0887), "REASONREC": (0.1839, 0.1671)},
    },
}

# Table 2: AUC, LogLoss of CTR prediction.
TABLE_2 = {
    "amazon_beauty": {"AutoInt+": (0.8732, 0.2031), "DLRM": (0.8819, 0.1672), "FinalMLP": (0.8801, 0.1993),
                      "DCNv2": (0.8825, 0.1742), "P5": (0.7744, 0.4336), "VIP5": (0.8415, 0.3573),
                      "REASONREC": (0.9113, 0.1993)},
    "amazon_toys": {"AutoInt+": (0.7533, 0.3115), "DLRM": (0.7542, 0.3411), "FinalMLP": (0.7635, 0.3021),
                    "DCNv2": (0.7513, 0.3571), "P5": (0.6931, 0.4946), "VIP5": (0.7113, 0.3846),
                    "REASONREC": (0.7815, 0.3329)},
}


def published(dataset: str, task: str) -> dict[str, dict[str, float]]:
    """The paper's rows for ``task`` on ``dataset`` as {method: {metric: value}}; empty when it has none."""
    if task == "ctr":
        return {m: {"AUC": a, "LogLoss": b} for m, (a, b) in TABLE_2.get(dataset, {}).items()}
    return {m: {"HR@5": a, "NDCG@5": b} for m, (a, b) in TABLE_1.get(dataset, {}).get(task, {}).items()}

# Table A4: multi-domain sequential recommendation, HR@5 / NDCG@5 by composition (1: Sports + Beauty, 2: + Clothing,
# 3: + Toys).
TABLE_A4 = {
    "P5": {"Sports+Beauty": (0.0195, 0.0096), "+Clothing": (0.0115, 0.0042), "+Toys": (0.0051, 0.0011)},
    "VIP5": {"Sports+Beauty": (0.0311, 0.0213), "+Clothing": (0.0159, 0.0111), "+Toys": (0.0081, 0.0053)},
    "REASONREC": {"Sports+Beauty": (0.0582, 0.0488), "+Clothing": (0.0323, 0.0235), "+Toys": (0.0199, 0.0132)},
}

# Table A2: explanation generation, BLEU-4 / ROUGE-L (x 100) on Beauty and Toys.
TABLE_A2 = {
    "Attn2Seq": {"Beauty": (0.8014, 9.7992), "Toys": (1.6419, 10.7834)},
    "NRT": {"Beauty": (0.8438, 9.9785), "Toys": (1.9267, 11.2239)},
    "PETER": {"Beauty": (1.2172, 9.4628), "Toys": (3.7822, 11.8632)},
    "P5": {"Beauty": (1.0389, 10.9447), "Toys": (1.4698, 10.1814)},
    "VIP5": {"Beauty": (1.2983, 12.9471), "Toys": (2.3421, 12.0865)},
    "REASONREC": {"Beauty": (4.3683, 17.4422), "Toys": (5.6332, 20.8345)},
}
