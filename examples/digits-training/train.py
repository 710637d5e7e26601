"""Train a digit classifier and track it, in the seed's three steps.

scikit-learn's digits data set (it ships with the package: nothing is downloaded), an SGD
logistic regression, one pass over the training set per epoch; loss, accuracy, precision
and F1 on the held-out set after each epoch.

    python train.py --project digits --name baseline --alpha 0.0001 --epochs 20

Runs go to the platform `modelcloud up` configured, else to ~/.modelcloud/tracking.db.
"""

import argparse
import time

from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score
from sklearn.model_selection import train_test_split

import modelcloud


def train(run, epochs, alpha, pause_s=0.0):
    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features / 16, labels, random_state=0)
    model = SGDClassifier(loss="log_loss", alpha=alpha, random_state=0)
    classes = sorted(set(labels))
    for epoch in range(epochs):
        model.partial_fit(train_x, train_y, classes=classes)
        predicted = model.predict(test_x)
        run.log(
            epoch=epoch,
            loss=log_loss(test_y, model.predict_proba(test_x), labels=classes),
            acc=accuracy_score(test_y, predicted),
            precision=precision_score(test_y, predicted, average="macro", zero_division=0),
            f1=f1_score(test_y, predicted, average="macro"),
        )
        time.sleep(pause_s)  # a real model takes a while per epoch; the live page shows it


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="digits")
    parser.add_argument("--name", default="baseline")
    parser.add_argument("--alpha", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between epochs")
    args = parser.parse_args()
    # 1. start, with the hyperparameters
    run = modelcloud.tracking.start(
        project=args.project, name=args.name, params={"alpha": args.alpha, "epochs": args.epochs}
    )
    # 2. log each epoch's metrics (inside train)
    train(run, args.epochs, args.alpha, args.pause)
    # 3. finish
    run.finish()
    print(f"run {run.name} ({run.id}) finished")


if __name__ == "__main__":
    main()
