"""The key service's operations, one module per group (``key_ops``, ``alias_ops``,
``rotation_ops``, ``crypto_ops``, ``grant_ops``, ``iam_ops`` for the IAM extension calls), on the
helpers every operation shares: ``context`` (CallContext, the state of one call inside its
transaction), ``keys`` (lookup, material, state checks, time effects), ``paging`` and ``managed``
(AWS managed keys). Called only by volumed.kms.service, which owns the transaction.
"""
