class _Platform:
    def is_unspecified(self) -> bool:
        return False


current_platform = _Platform()
