"""mindpet_lite.adapters"""
