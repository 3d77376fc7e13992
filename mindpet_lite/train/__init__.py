"""mindpet_lite.train"""
