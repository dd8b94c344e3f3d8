"""Hyper-parameter search with scikit-learn: a bpnet network inside GridSearchCV.

``BPNetClassifier`` is a scikit-learn estimator, so it drops into a
``Pipeline`` (the scaler is then refitted on each training fold only, no
leakage) and into ``GridSearchCV``, ``RandomizedSearchCV`` or
``cross_val_score``.  Pipeline parameters are addressed as ``step__param``.

    python examples/05_sklearn_grid_search.py
"""
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from bpnet.sklearn import BPNetClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

pipe = Pipeline([("scale", StandardScaler()),
                 ("net", BPNetClassifier(epochs=15, batch_size=32, seed=0))])
grid = {
    "net__lr": [1e-3, 3e-3],
    "net__hidden_layer_sizes": [(32,), (128,)],
    "net__dropout": [0.0, 0.2],
}
search = GridSearchCV(pipe, grid, cv=3, n_jobs=1)   # 8 settings x 3 folds = 24 fits, then one refit

start = time.perf_counter()
search.fit(X_train, y_train)
elapsed = time.perf_counter() - start

print(f"{'lr':>7} {'hidden':>8} {'dropout':>7}  cv accuracy")
for params, mean, std in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                             search.cv_results_["std_test_score"]):
    print(f"{params['net__lr']:>7g} {str(params['net__hidden_layer_sizes']):>8} "
          f"{params['net__dropout']:>7g}  {mean:.4f} ± {std:.4f}")
print(f"\nbest parameters: {search.best_params_}  (cv accuracy {search.best_score_:.4f})")
print(f"test accuracy of the refitted best model: {search.score(X_test, y_test):.4f}")
print(f"search time: {elapsed:.1f} s")
