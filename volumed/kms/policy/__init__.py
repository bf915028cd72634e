"""Authorization, as AWS KMS decides it: pure functions, no I/O, no keystore.

``policy`` (the IAM policy language and its evaluation), ``wildcard`` (IAM ``*``/``?`` matching in
linear time), ``grants`` (grant semantics), ``authz`` (one call's decision: policies, then grants),
``decisions`` (the cache that lets decisions be made outside the keystore's write lock).
Below: volumed.kms.arn, volumed.kms.principals, volumed.kms.awsmodel, volumed.kms.values.
"""
