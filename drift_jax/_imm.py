"""placeholder until the IMM lands"""


class IMMModel:  # noqa
    pass


def imm_filter(*a, **k):  # noqa
    raise NotImplementedError
